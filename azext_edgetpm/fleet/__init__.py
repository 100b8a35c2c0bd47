"""The fleet: inventories, the parallel per-device step runner, its state journal, shards and
the summary. Imports operations/ and adapters' option types only; never the az face.

A new fleet command (deprovision, rekey, ...) brings its own pipeline and reuses the rest:

    steps = [MyStep(), ...]                        # operations.pipeline.Step subclasses
    devices = inventory.read_inventory(path)       # validated as a whole, rows named
    jobs = [jobs.job_for(d, defaults) for d in devices]   # or its own job type with .key and .ssh
    runner = Runner(steps, services, state.Journal(path), max_parallel=n, progress=Progress(len(jobs), report))
    outcomes = runner.run(jobs, skip=lambda record: record.get("status") == "done")

Each step gets a DeviceContext: ctx.session() (the device's one SSH connection), ctx.services
(what the run shares: one DPS client with its budget), ctx.data (earlier steps' results),
ctx.record (the journal record of an earlier run). A step returns {"status": ok|changed, ...} for
the journal, or raises (a domain error): that device stops there, the others go on.
"""
