test -f /dst/keep.txt && ! test -e /dst/x.log && ! test -e /dst/skip
