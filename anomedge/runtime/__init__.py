"""The edge runtime: numpy, OpenCV and the backend library of the user's choice. Never imports torch."""
