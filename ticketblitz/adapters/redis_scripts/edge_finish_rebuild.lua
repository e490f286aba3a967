-- End of a rebuild (RedisAdmission): mark the edge state ready and drop the rebuild lock, only while the
-- caller still owns the lock (else another rebuilder took over and will set the marker itself).
-- KEYS[1]: the ready marker; KEYS[2]: the rebuild lock. ARGV[1]: the rebuilder's token; ARGV[2]: marker value.
-- Returns 1 when the marker was set, else 0.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
