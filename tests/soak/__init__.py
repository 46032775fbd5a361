"""The soak (``make soak``): the pipeline at half its capacity for a long time while its
components are killed one a minute, with a rolling upgrade mid-run; nothing may be lost
and no process may grow (docs/RELIABILITY.md, "Soak")."""
