"""``ipsbench matrix``: the P40 report from one command — networks × precisions, exported, benched, served and
loaded, in one combined report."""
