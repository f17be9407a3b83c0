"""Choosing one candidate per method and scope: the shared selector, its table schema, the first-order prior."""
