"""crisp.tasks: built-in tasks with real data (scikit-learn's digits) for the CLI, the examples and the accuracy benchmark."""
