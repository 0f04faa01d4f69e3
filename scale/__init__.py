"""Scale-out on a Redis Cluster: a local cluster builder, network namespaces for several
server hosts on one machine, and the benchmarks that measure them (ack durability,
several hosts in one room). Used by the cluster tests and by `python -m scale.<name>`."""
