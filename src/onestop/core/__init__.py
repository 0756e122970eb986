"""The ground floor every stage stands on; it imports no stage.

errors (what the user can fix), paths (where configs, recipes and caches are), files (atomic writes),
rundir (the one owner of a run directory's layout), wandb_mode (online or offline), hub (reachability).
"""
