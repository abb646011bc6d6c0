"""Merged, sorted ``[start, end)`` ranges: what a KM remembers of a stream's delivered
indexes once their keys are gone (:mod:`keyplane.keymanager.vault`), and the consumed byte
ranges of a link key block (:mod:`keyplane.keymanager.keystore`)."""

from __future__ import annotations

import bisect

__all__ = ["add_index", "add_indexes", "add_range", "in_ranges", "overlaps", "remove_index"]


def add_index(ranges: list[list[int]], i: int) -> bool:
    """Add index ``i`` to merged, sorted ``[start, end)`` ranges; whether it was new."""
    at = bisect.bisect_right(ranges, [i, float("inf")])
    if at and ranges[at - 1][1] > i:
        return False
    if at and ranges[at - 1][1] == i:
        ranges[at - 1][1] = i + 1
        if at < len(ranges) and ranges[at][0] == i + 1:
            ranges[at - 1][1] = ranges.pop(at)[1]
    elif at < len(ranges) and ranges[at][0] == i + 1:
        ranges[at][0] = i
    else:
        ranges.insert(at, [i, i + 1])
    return True


def add_indexes(ranges: list[list[int]], indexes: list[int]) -> bool:
    """Add ``indexes`` to merged, sorted ``[start, end)`` ranges; whether any was new.

    A bulk delivery's indexes are nearly always one run that extends the last range, which
    is one comparison here instead of a search per index.
    """
    n, first = len(indexes), indexes[0]
    if indexes[-1] == first + n - 1 and indexes == list(range(first, first + n)):
        # one ascending run (a bulk delivery as it was made): no sort, no walk
        if ranges and ranges[-1][1] == first:
            ranges[-1][1] = first + n
            return True
        if not ranges or ranges[-1][1] < first:
            ranges.append([first, first + n])
            return True
    new = False
    indexes = sorted(indexes)
    start = prev = indexes[0]
    for i in [*indexes[1:], None]:
        if i is not None and i <= prev + 1:
            prev = max(prev, i)
            continue
        # the run [start, prev + 1)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = prev + 1
            new = True
        elif ranges and ranges[-1][1] < start:
            ranges.append([start, prev + 1])
            new = True
        else:
            for j in range(start, prev + 1):
                new = add_index(ranges, j) or new
        if i is not None:
            start = prev = i
    return new


def remove_index(ranges: list[list[int]], i: int) -> bool:
    """Take index ``i`` out of merged, sorted ``[start, end)`` ranges; whether it was in."""
    at = bisect.bisect_right(ranges, [i, float("inf")])
    if not at or ranges[at - 1][1] <= i:
        return False
    start, end = ranges[at - 1]
    parts = [[a, b] for a, b in ((start, i), (i + 1, end)) if a < b]
    ranges[at - 1:at] = parts
    return True


def in_ranges(ranges: list[list[int]], i: int) -> bool:
    at = bisect.bisect_right(ranges, [i, float("inf")])
    return bool(at) and ranges[at - 1][1] > i


def overlaps(ranges: list[list[int]], start: int, end: int) -> bool:
    """Whether ``[start, end)`` meets any of merged, sorted ``ranges``."""
    i = bisect.bisect_left(ranges, [start, start])
    if i > 0 and ranges[i - 1][1] > start:
        return True
    return i < len(ranges) and ranges[i][0] < end


def add_range(ranges: list[list[int]], start: int, end: int) -> None:
    """Add ``[start, end)`` to sorted ``ranges`` and merge them (in place)."""
    i = bisect.bisect_left(ranges, [start, start])
    ranges.insert(i, [start, end])
    merged: list[list[int]] = []
    for s, e in ranges:
        if merged and merged[-1][1] >= s:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    ranges[:] = merged
