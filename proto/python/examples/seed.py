#!/usr/bin/env python3
"""The seed example through the Python client: run a busybox task that writes
"hello world" into its working directory, wait for it, print the file it wrote.

    seed.py [ADDR [IMAGE]]

ADDR: argv[1], else $BERTH_ADDR, else unix:///run/berth/agent.sock.
IMAGE: argv[2], else $BERTH_IMAGE, else busybox.
Exit status: 0 when the task succeeded and the file was read, 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import time

import berth_client
from berth_client import pb

COMMAND_LINE = "/bin/sh -c \"echo 'hello world' > $AZ_BATCH_TASK_WORKING_DIR/output.txt\""
RUN_OPTIONS = "--rm --workdir /"


def main(argv: list[str]) -> int:
    addr = argv[1] if len(argv) > 1 else os.environ.get("BERTH_ADDR", berth_client.DEFAULT_ADDR)
    image = argv[2] if len(argv) > 2 else os.environ.get("BERTH_IMAGE", "busybox")
    job, task = "sample", f"hello-py-{int(time.time() * 1000)}"
    try:
        with berth_client.connect(addr) as agent:
            agent.run_task(job, task, COMMAND_LINE, image=image, run_options=RUN_OPTIONS)
            done = agent.wait(job, task, timeout=120)
            if done.result != pb.SUCCESS:
                info = done.failure_info
                print(f"{job}/{task} failed: {info.code}: {info.message}", file=sys.stderr)
                return 1
            output = agent.read_file(job, task, "wd/output.txt")
    except berth_client.BerthError as e:
        print(f"seed: {e}", file=sys.stderr)
        return 1
    print(f"{job}/{task} exited {done.exit_code}; wd/output.txt:", file=sys.stderr)
    sys.stdout.write(output.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
