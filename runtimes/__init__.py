"""Framework adapters. Imported only inside a runtime worker process, never by the gateway."""
