"""Peak resident memory of this process and the glibc allocator setting that makes it track
live memory (used by the block and model benchmarks' memory workers)."""
from __future__ import annotations

#: glibc ``mallopt`` parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's largest (dynamic) mmap threshold on 64-bit.
HEAP_MMAP_THRESHOLD = 32 << 20


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def mallopt(param: int, value: int) -> bool:
    """glibc ``mallopt`` (False where unavailable, e.g. not glibc)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):
        return False


def fix_mmap_threshold(nbytes: int) -> bool:
    """Serve every allocation of ``nbytes`` or more by mmap, so a freed tensor buffer goes back
    to the OS and the RSS high-water mark is that of live memory, not of heap fragmentation.
    Returns whether it took effect (glibc only; ``nbytes`` 0 leaves the default)."""
    return nbytes > 0 and mallopt(M_MMAP_THRESHOLD, nbytes)
