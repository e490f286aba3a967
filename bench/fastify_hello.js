// Baseline of bench/run.py: Fastify 5 hello world, POST and GET /hello -> {"hello":"world"} (the original
// TicketBlitz ran on Fastify). Installed by run.py with `npm install --prefix bench/.node fastify@5`.
// With FILE, also GET /bytes -> the bytes of FILE, read once at start (the seat map as the door serves it
// from its cache: the read baselines of (d) and bench/reads.sh); with "gzip" after it they are sent as
// Content-Encoding: gzip (FILE is then the gzip body).
//
//   node bench/fastify_hello.js PORT [FILE [gzip]]   (127.0.0.1 only; prints "listening" when ready)
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const fastify = require(path.join(__dirname, '.node', 'node_modules', 'fastify'))({ logger: false })

const port = Number(process.argv[2] || 3000)

fastify.post('/hello', async () => ({ hello: 'world' }))
fastify.get('/hello', async () => ({ hello: 'world' }))

if (process.argv[3]) {
  const body = fs.readFileSync(process.argv[3])
  const gzip = process.argv[4] === 'gzip'
  fastify.get('/bytes', async (request, reply) => {
    reply.header('content-type', 'application/json')
    if (gzip) reply.header('content-encoding', 'gzip')
    return reply.send(body)
  })
}

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    fastify.close().then(() => process.exit(0), () => process.exit(1))
  })
}

fastify.listen({ host: '127.0.0.1', port }).then(
  () => console.log(`listening on http://127.0.0.1:${port}`),
  (err) => { console.error(err); process.exit(1) }
)
