"""The writer stage: stores features and rejections, keeps the job ledger, completes jobs."""
