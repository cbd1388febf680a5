"""flower-bench fleet app: cheap ClientApp, stock FedAvg ServerApp (see ../README.md)."""
