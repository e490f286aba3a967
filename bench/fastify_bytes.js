// Baseline of bench/reads.sh: Fastify 5 answering GET /bytes with the bytes of a file, read once at start
// (the seat map as the door serves it from its cache), and GET /hello -> {"hello":"world"}.
// With a third argument "gzip" the bytes are sent as Content-Encoding: gzip (the file is the gzip body).
//
//   node bench/fastify_bytes.js PORT FILE [gzip]   (127.0.0.1 only; prints "listening" when ready)
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const fastify = require(path.join(__dirname, '.node', 'node_modules', 'fastify'))({ logger: false })

const port = Number(process.argv[2] || 3000)
const body = fs.readFileSync(process.argv[3])
const gzip = process.argv[4] === 'gzip'

fastify.get('/bytes', async (request, reply) => {
  reply.header('content-type', 'application/json')
  if (gzip) reply.header('content-encoding', 'gzip')
  return reply.send(body)
})
fastify.get('/hello', async () => ({ hello: 'world' }))

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    fastify.close().then(() => process.exit(0), () => process.exit(1))
  })
}

fastify.listen({ host: '127.0.0.1', port }).then(
  () => console.log(`listening on http://127.0.0.1:${port}`),
  (err) => { console.error(err); process.exit(1) }
)
