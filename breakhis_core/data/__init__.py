"""Data a model learns from: image files decoded, BreakHis names and manifests scanned into records, splits, arrays,
uploads, stain normalisation, physical pixel size and the product's own sample."""
