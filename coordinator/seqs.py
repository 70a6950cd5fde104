"""The snapshot seqs that arrived from one agent, in memory that does not grow with
the run: all seqs up to `upto`, plus the few above it that came out of order.

An agent numbers its snapshots 1, 2, 3 ... and resends until acked, so the seqs
received are almost always a prefix; a set of every seq would grow by one per
agent per interval (a thousand agents for an hour: millions of ints)."""

from __future__ import annotations


class SeqSet:
    __slots__ = ("above", "upto")

    def __init__(self) -> None:
        self.upto = 0  # seqs count from 1
        self.above: set[int] = set()

    def __contains__(self, seq: int) -> bool:
        return 0 < seq <= self.upto or seq in self.above

    def __len__(self) -> int:
        return self.upto + len(self.above)

    def add(self, seq: int) -> None:
        if seq == self.upto + 1 and seq > 0:
            self.upto = seq
            above = self.above
            while above and self.upto + 1 in above:
                self.upto += 1
                above.remove(self.upto)
        elif seq > self.upto or seq <= 0:  # no agent sends seq <= 0, but one may
            self.above.add(seq)

    def has_all_up_to(self, last: int) -> bool:
        """Whether every seq from 1 to `last` arrived."""
        return last <= self.upto or all(s in self.above for s in range(self.upto + 1, last + 1))

    def missing_up_to(self, last: int, limit: int = 1000) -> list[int]:
        """The seqs from 1 to `last` that never arrived (at most `limit` of them)."""
        out: list[int] = []
        for s in range(self.upto + 1, last + 1):
            if s not in self.above:
                out.append(s)
                if len(out) >= limit:
                    break
        return out
