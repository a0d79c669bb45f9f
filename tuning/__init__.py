"""Ray Tune sweeps over nri-ray training runs (`nri-ray sweep`). Imports ray; the package does not."""
