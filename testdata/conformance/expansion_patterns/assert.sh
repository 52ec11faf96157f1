test "$(cat /out)" = "to/file.tar.gz|file.tar.gz|path/to/file.tar|path/to/file|path/TO/file.tar.gz|pAth/to/file.tAr.gz"
