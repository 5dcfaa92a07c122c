"""A ``molrecon`` CLI entry point that SIGKILLs itself in the middle of a training step (resume tests).

Run it as a script with the CLI's arguments. ``KILL_AT_STEP=N`` kills the process during step N, after the
forward pass, like a preempted job; under torchrun only the rank named by ``KILL_RANK`` (default 0) dies.
"""

import textwrap

KILLABLE_CLI = textwrap.dedent("""
    import os, signal, sys
    from molrecon.cli import main
    kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
    if kill_at and os.environ.get("RANK", "0") == os.environ.get("KILL_RANK", "0"):
        from molrecon.data import physics_from_batch
        from molrecon.train import trainer as T
        original = T.Trainer.train_step
        def step_then_die(self, batch):
            if self.step + 1 == kill_at:
                self.model(batch["kspace"], physics_from_batch(batch))
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, batch)
        T.Trainer.train_step = step_then_die
    sys.exit(main(sys.argv[1:]))
""")
