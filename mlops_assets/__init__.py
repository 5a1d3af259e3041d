"""mlops_assets: features, datasets, models and endpoints as Dagster assets, one asset graph per model spec."""
