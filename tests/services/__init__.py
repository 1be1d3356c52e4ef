"""Tests of the control plane: config store, config and flow services, processors."""
