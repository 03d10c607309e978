"""Looking inside a model for TensorBoard: probe batches, device histograms, image rendering, event-file reports.

The callbacks that write these views live in `callbacks_kit.callbacks`; this package holds
what they share, and `event_report` reads a finished run back (`callbacks-kit inspect`).
"""
