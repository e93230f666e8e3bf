"""replay: the real engine in virtual time over an auction log, the published baselines it is compared with,
and the metrics that judge a pacer by what it did to the money."""
