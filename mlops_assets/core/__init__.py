"""Plain Python that decides things: no Dagster import anywhere below this package.

Every function here takes data frames and specs and returns data frames, numbers or decisions, so
it can be unit-tested in milliseconds and reused outside Dagster (the CLI, benchmarks, notebooks).
"""
