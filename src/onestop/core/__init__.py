"""The ground floor every stage stands on; it imports no stage.

errors (what the user can fix), paths (where configs, recipes and caches are), files (durable atomic
writes), rundir (the one owner of a run directory's layout, and its lock), wandb_mode (online or offline),
hub (reachability), secrets (credentials redacted from what is written), environment (empty variables
count as unset; ONESTOP_DEBUG).
"""
