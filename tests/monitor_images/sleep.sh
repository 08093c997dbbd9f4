# Never finishes: the monitor must time out, kill and remove it.
echo "sleeping"
sleep 600
