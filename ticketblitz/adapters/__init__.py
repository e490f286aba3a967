"""Adapters of the store, queue and lock ports: embedded ones here, distributed ones beside them."""
