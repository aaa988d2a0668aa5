"""Exit statuses of every ``adamrot`` process, defined once (docs/RUNS.md). Here, in the
lowest layer that needs one (the preemption callback exits 143), and free of imports so the
command's ``--help`` stays instant.

* 0 done; 1 an error-level preflight finding, or an unexpected failure;
* 2 refused input: one ``adamrot: error:`` line, nothing written;
* 3 non-finite values stopped training;
* 4 a DDP rank lost its launcher;
* 130 interrupted by Ctrl-C (SIGINT);
* 143 stopped by SIGTERM after saving ``last.ckpt`` (run the same command to resume).
"""
import signal

EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE = 3
EXIT_PEER_LOST = 4
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_PREEMPTED = 128 + signal.SIGTERM
