"""groundcache's second stage: train, evaluate and run grounding models on a feature cache."""
