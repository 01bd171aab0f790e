"""A small process between the harness and a measured client, so the client's peak RSS is its own.

Linux records a process's peak RSS across ``exec``: a client spawned straight from the harness
(``vfork``/``fork`` then ``exec``) starts with the harness's own high-water mark, about 95 MB once
the harness has imported aiohttp and pyarrow, and every client smaller than that showed the
harness's size. This launcher runs with ``python -I -S`` (no site, stdlib only, about 10 MB), forks
and execs the client, and writes the client's own ``rusage`` from ``os.wait4`` (and the monotonic
time just before the fork) as JSON:

    python -I -S benchmarks/launcher.py RESULT.json PROGRAM [ARG ...]

Its exit status is the client's (128 + N when signal N ended it).
"""

import json
import os
import sys
import time


def main() -> int:
    result_path, argv = sys.argv[1], sys.argv[2:]
    spawned_at = time.monotonic()  # CLOCK_MONOTONIC: comparable with the harness's own clock
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)  # exec failed: the harness sees exit code 127
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    payload = {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_kib": usage.ru_maxrss,
        "exit_code": code,
        "spawned_at": spawned_at,
    }
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
