# The compiled kernel of the histogram table (protocol/_table_kernel.c).
from typing import Any

import numpy as np
import numpy.typing as npt

def check(
    h: int, ns: bytes, sc: bytes, d: bytes, ep: bytes, ev: bytes, cw: int, c: bytes
) -> str | None: ...
def scatter(block: npt.NDArray[np.uint64], offsets: bytes, tables: list[Any]) -> None: ...
