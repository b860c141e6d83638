"""Running a trained model: generation, continuous batching and the HTTP server."""
