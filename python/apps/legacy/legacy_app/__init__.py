"""flower-rs test app: legacy NumPyClient ClientApp and ServerApp (see README.md)."""
