"""The SD3.5 service: streamed text-to-image for Large, Large Turbo and Medium."""
