"""Built-in executors (where ``cxraug experiment --executor`` runs the study's jobs)."""
