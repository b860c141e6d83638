"""What a run leaves behind for people: the metrics log and the HTML report."""
