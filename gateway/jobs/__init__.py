"""Batch jobs: a script run to completion in a partition, with tracked state and kept output.

A job is not a second way to run code: it is a kernel of the gateway's own (the same kernelspec,
provisioner, runtime, partition queue and expiry as any other) that the gateway itself drives,
executing the job's code once, writing everything the kernel prints to the job's log, and
shutting the kernel down at the end, which releases the partition. A directory job (the seed's
``main.py`` with ``main()``, sent as a zip that `cumulus_jupyter.protocol.jobarchive` checks)
runs the agent's `cumulus_jupyter.agent.job` as its code and keeps the result document it
publishes.

- `gateway.jobs.model`: `Job`, its `JobState` lifecycle, `new_job` (a submission, checked);
- `gateway.jobs.store`: `JobStore`, jobs, their logs, zips and result documents in the gateway's
  state;
- `gateway.jobs.runner`: `JobRunner`, which runs each job in its kernel;
- the REST endpoints are `gateway.handlers.jobs`.
"""
