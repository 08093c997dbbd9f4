echo "writing nothing"
