# The fast engine's compiled lane (agent/_lane.c).
from collections.abc import Callable, Mapping, Sequence, Sized

class Lane:
    enabled: bool
    until: float
    sent: float
    pos: int
    @property
    def sends(self) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    def __init__(
        self,
        driver: object,
        cycle: Sequence[tuple[bytes, float, str]],
        waiters: Sized,
        phase: str,
        checks: Mapping[str, tuple[bytes, int, float]] | None = None,
    ) -> None: ...
    def take(self) -> list[tuple[str, int, tuple[int, int, int, int], int, int, bytes]]: ...

class ConnCore:
    nbytes: int
    deadline: float
    served: int
    keep: bool
    lane: Lane | None
    writer: Callable[[bytes], object] | None
    def data_received(self, data: bytes) -> None: ...
    def detach_lane(self) -> None: ...

def parse_head(data: bytes) -> tuple[int, int, int, bool] | None: ...
