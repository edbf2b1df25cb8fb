"""The one adapter around tritonclient and the tritonserver binary."""
