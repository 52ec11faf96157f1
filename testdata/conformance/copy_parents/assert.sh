test -f /dst/a/b/file.txt && test -f /dst/c/file.txt
