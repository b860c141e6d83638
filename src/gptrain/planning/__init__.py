"""What a run will cost before it starts: FLOPs, time, money and memory."""
