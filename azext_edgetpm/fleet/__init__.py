"""The fleet: inventories, the parallel per-device step runner, its state journal, shards and
the summary. Imports operations/ and adapters' option types only; never the az face."""
