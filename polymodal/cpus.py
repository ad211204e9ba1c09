"""How many CPUs this process can use: fewer than the machine has under taskset or a container's cpuset (affinity)
or a CPU quota (`docker run --cpus 2`, a Kubernetes CPU limit: cgroup's cpu.max). PyTorch and onnxruntime size
their thread pools by the machine's cores; in a 2-CPU container on a 32-core host that is 16-32 threads sharing 2
CPUs' worth of time, throttled by the quota every 100 ms.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")  # "200000 100000": quota and period in microseconds; "max ...": none
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def _quota_cpus() -> int | None:
    """The CPU quota as whole CPUs (rounded up: 1.5 CPUs of time keep 2 threads busy part of the time), or None."""
    try:
        quota, period = CGROUP_V2.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (p.read_text().strip() for p in CGROUP_V1)
        except (OSError, ValueError):
            return None
    try:
        quota_us, period_us = int(quota), int(period)  # "max" (v2) or -1 (v1): no quota
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, math.ceil(quota_us / period_us))


def usable_cpus() -> int | None:
    """The CPUs this process can use when fewer than the machine's (affinity, then CPU quota), else None: the
    libraries' own default is right then."""
    machine = os.cpu_count() or 0
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this OS (macOS, Windows)
        allowed = machine
    quota = _quota_cpus()
    usable = min(allowed, quota) if quota else allowed
    return usable if 0 < usable < machine else None
