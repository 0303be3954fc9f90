"""The model registry, on MLflow's: the package a model is registered as (`package`), a
branch's candidate (`register`), production's champion and its journal (`champion`), removing
a finished branch's models (`prune`) and the scoring pipeline's pin (`pin`)."""
