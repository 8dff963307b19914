"""The routing benchmark (`llmd bench`): workload, load driver, routers, live and
discrete-event runs, report. See benchmarks/routing/README.md."""
