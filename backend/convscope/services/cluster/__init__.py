"""Scale-out on a Ray cluster (the optional ``convscope[cluster]`` extra).

``jobs.RayJobManager``: the job table as a named detached actor (``table.JobTable``), jobs as
Ray tasks (``worker.run_job``); ``serving.deploy``: the FastAPI app on Ray Serve. Nothing here
is imported unless ``CONVSCOPE_RAY_ADDRESS`` is set or ``convscope serve --cluster`` runs, and
this ``__init__`` imports nothing: the default install never imports Ray.
"""
