"""flower-rs test app: message-API ClientApp and ServerApp (see README.md)."""
