"""Flow control: saturation detection, priority-band queueing, admission (shed/queue/503)."""
