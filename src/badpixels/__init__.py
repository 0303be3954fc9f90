"""Find bad pixels (hot, dead, stuck, flickering) in raw video frames: the example pipeline."""
