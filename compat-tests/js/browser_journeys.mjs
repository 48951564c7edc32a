// Page journeys in a real browser: Debian's headless Chromium driven by playwright-core.
//
// Usage: node browser_journeys.mjs  (input: one JSON object on stdin)
//   { issuer, client_id, username, password, callback, post_logout, screenshots, chromium,
//     journeys: [name, ...],
//     devices: { name: { user_code, verification_uri, verification_uri_complete } } }
// (`devices`: the device authorization the Rust side started for each device-flow journey; it
// polls /token for them afterwards.)
// Runs the named journeys in order and prints one JSON object:
//   { journeys: { name: { state, verifier, status, url, headings, audits } }, screenshots: [path] }
// Each journey throws (exit status 1, message on stderr) when the browser sees something wrong;
// the Rust side (compat-tests/tests/compat/browser.rs) checks what reached the redirect URI and
// redeems the codes.

import crypto from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'

import { chromium } from 'playwright-core'

const input = await readStdin()

// The journeys, by name. `context` says which browser context a journey runs in: `main` is kept
// across journeys (its session cookie signs it in), `fresh` is a new one each time, `fresh-nojs`
// a new one with JavaScript disabled.
const JOURNEYS = {
  // Login (a wrong password first), consent, Allow, back at the redirect URI.
  login_and_consent: {
    context: 'main',
    async run(j) {
      const page = await j.open(j.authorize())
      await j.expectHeading(page, 'Sign in')
      await j.shot(page, 'login')
      await page.getByLabel('Username').fill(input.username)
      await page.getByLabel('Password').fill('not the password')
      await j.navigation(page, () => page.getByRole('button', { name: 'Sign in' }).click())
      await j.expectHeading(page, 'Sign in')
      const alert = await page.getByRole('alert').textContent()
      if (!/wrong username or password/i.test(alert)) throw new Error(`no wrong-password alert: ${alert}`)
      // The username stays filled in and the focus moves to the password.
      await j.expectFocus(page, '#password')
      await j.shot(page, 'login-wrong-password')
      await page.getByLabel('Password').fill(input.password)
      await j.navigation(page, () => page.getByRole('button', { name: 'Sign in' }).click())
      await j.expectHeading(page, 'Allow access?')
      await j.shot(page, 'consent')
      await j.navigation(page, () => page.getByRole('button', { name: 'Allow' }).click())
      await j.atCallback(page)
      await j.shot(page, 'callback')
    },
  },

  // Another browser, the same user and client: sign in, and no consent page (remembered).
  remembered_consent: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(j.authorize())
      await j.signIn(page)
      await j.atCallback(page)
      if (j.headings.includes('Allow access?')) throw new Error('the consent page was shown again')
      await j.shot(page, 'callback')
    },
  },

  // prompt=consent in the signed-in browser, then Deny: access_denied at the redirect URI.
  deny: {
    context: 'main',
    async run(j) {
      const page = await j.open(j.authorize({ prompt: 'consent' }))
      await j.expectHeading(page, 'Allow access?')
      await j.shot(page, 'consent')
      await j.navigation(page, () => page.getByRole('button', { name: 'Deny' }).click())
      await j.atCallback(page)
      await j.shot(page, 'callback')
    },
  },

  // An unknown client: an error page on the issuer, no redirect.
  error_unknown_client: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(j.authorize({ client_id: 'no-such-client' }))
      await j.expectErrorPage(page)
      await j.shot(page, 'error')
    },
  },

  // A redirect URI the client did not register: an error page on the issuer, no redirect.
  error_bad_redirect_uri: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(j.authorize({ redirect_uri: 'http://evil.example/callback' }))
      await j.expectErrorPage(page)
      await j.shot(page, 'error')
    },
  },

  // Keyboard only: the username field has focus, Tab moves to the password, Enter submits; on the
  // consent page Tab reaches Allow and Enter activates it.
  keyboard_only: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(j.authorize({ prompt: 'consent' }))
      await j.expectFocus(page, '#username')
      await page.keyboard.type(input.username)
      await page.keyboard.press('Tab')
      await j.expectFocus(page, '#password')
      await page.keyboard.type(input.password)
      await j.shot(page, 'login')
      await j.navigation(page, () => page.keyboard.press('Enter'))
      await j.expectHeading(page, 'Allow access?')
      await j.tabTo(page, 'button[value="allow"]')
      await j.shot(page, 'consent')
      await j.navigation(page, () => page.keyboard.press('Enter'))
      await j.atCallback(page)
    },
  },

  // JavaScript disabled: the pages still work (plain forms).
  no_javascript: {
    context: 'fresh-nojs',
    async run(j) {
      const page = await j.open(j.authorize({ prompt: 'consent' }))
      await j.signIn(page)
      await j.expectHeading(page, 'Allow access?')
      await j.shot(page, 'consent')
      await j.navigation(page, () => page.getByRole('button', { name: 'Allow' }).click())
      await j.atCallback(page)
    },
  },

  // response_mode=form_post: the page posts the code to the redirect URI by itself.
  form_post: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(j.authorize({ response_mode: 'form_post' }))
      await j.signIn(page, { audit: false })
      await j.atCallback(page)
      await j.shot(page, 'callback')
    },
  },

  // response_mode=form_post without JavaScript: the noscript Continue button posts it.
  form_post_no_javascript: {
    context: 'fresh-nojs',
    async run(j) {
      const page = await j.open(j.authorize({ response_mode: 'form_post' }))
      await j.signIn(page)
      await j.expectHeading(page, 'Continue to the application')
      await j.shot(page, 'continue')
      await j.navigation(page, () => page.getByRole('button', { name: 'Continue' }).click())
      await j.atCallback(page)
    },
  },

  // RP-initiated logout in the signed-in browser: confirm, back at the post-logout URI; the
  // next authorization asks to sign in again.
  logout: {
    context: 'main',
    async run(j) {
      const query = new URLSearchParams({
        client_id: input.client_id,
        post_logout_redirect_uri: input.post_logout,
        state: j.state,
      })
      const page = await j.open(`${input.issuer}/logout?${query}`)
      await j.expectHeading(page, 'Sign out')
      await j.shot(page, 'confirm')
      await j.navigation(page, () => page.getByRole('button', { name: 'Sign out' }).click())
      if (!page.url().startsWith(input.post_logout)) throw new Error(`not at the post-logout URI: ${page.url()}`)
      j.result.url = page.url()
      await j.open(j.authorize())
      await j.expectHeading(page, 'Sign in')
      await j.shot(page, 'signed-out')
    },
  },

  // Password guessing: wrong passwords until the login page answers 429 with Retry-After. It
  // spends the budget of the browser's address (127.0.0.1): keep it last.
  throttled: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(j.authorize())
      for (let attempt = 1; attempt <= 30; attempt++) {
        await page.getByLabel('Username').fill('mallory')
        await page.getByLabel('Password').fill(`guess ${attempt}`)
        await j.navigation(page, () => page.getByRole('button', { name: 'Sign in' }).click())
        if (j.result.status === 429) {
          j.result.attempts = attempt
          j.result.alert = await page.getByRole('alert').textContent()
          await j.expectHeading(page, 'Sign in')
          await j.shot(page, 'too-many')
          return
        }
      }
      throw new Error('30 wrong passwords and no 429')
    },
  },

  // ---- the device flow (RFC 8628): the verification page /device --------------------------

  // verification_uri_complete in a new browser: sign in, the code is prefilled, Continue, the
  // confirmation shows the same code, Approve. The device then gets its tokens.
  device_approve: {
    context: 'fresh',
    async run(j) {
      const device = j.device()
      const page = await j.open(device.verification_uri_complete)
      await j.expectHeading(page, 'Sign in')
      await j.expectFocus(page, '#username')
      await j.shot(page, 'sign-in')
      await j.signIn(page)
      await j.expectHeading(page, 'Connect a device')
      const prefilled = await page.getByLabel('Code shown on your device').inputValue()
      if (prefilled !== device.user_code) throw new Error(`code field holds "${prefilled}", not ${device.user_code}`)
      await j.shot(page, 'user-code')
      await j.navigation(page, () => page.getByRole('button', { name: 'Continue' }).click())
      await j.expectConfirmation(page, device)
      await j.shot(page, 'confirm')
      await j.navigation(page, () => page.getByRole('button', { name: 'Approve' }).click())
      await j.expectHeading(page, 'Device connected')
      await j.shot(page, 'approved')
    },
  },

  // verification_uri without JavaScript, keyboard only: sign in, type the code as a person might
  // (lower case, no dash) into the focused field, Enter, then Deny. The device gets access_denied.
  device_deny_typed: {
    context: 'fresh-nojs',
    async run(j) {
      const device = j.device()
      const page = await j.open(device.verification_uri)
      await j.signIn(page)
      await j.expectHeading(page, 'Connect a device')
      await j.expectFocus(page, '#user_code')
      const empty = await page.getByLabel('Code shown on your device').inputValue()
      if (empty !== '') throw new Error(`code field prefilled with "${empty}" without a code in the URL`)
      await page.keyboard.type(device.user_code.replace('-', '').toLowerCase())
      await j.shot(page, 'user-code')
      await j.navigation(page, () => page.keyboard.press('Enter'))
      await j.expectConfirmation(page, device)
      await j.shot(page, 'confirm')
      await j.navigation(page, () => page.getByRole('button', { name: 'Deny' }).click())
      await j.expectHeading(page, 'Request denied')
      await j.shot(page, 'denied')
    },
  },

  // In the browser signed in by the first journey (the device page shares the login session, so
  // no sign-in): a wrong code gets the code page again with 400 and an alert the field points
  // at; the right code then reaches the confirmation, left undecided.
  device_wrong_code: {
    context: 'main',
    async run(j) {
      const device = j.device()
      const page = await j.open(device.verification_uri)
      await j.expectHeading(page, 'Connect a device')
      await j.shot(page, 'user-code')
      const wrong = device.user_code === 'BCDF-GHJK' ? 'BCDF-GHJL' : 'BCDF-GHJK'
      await page.getByLabel('Code shown on your device').fill(wrong)
      await j.navigation(page, () => page.getByRole('button', { name: 'Continue' }).click())
      await j.expectHeading(page, 'Connect a device')
      const alert = await page.getByRole('alert').textContent()
      j.result.wrong_code = { status: j.result.status, alert }
      if (j.result.status !== 400) throw new Error(`a wrong code answered ${j.result.status}`)
      // The entry stays for correcting, with the focus and marked invalid.
      await j.expectFocus(page, '#user_code')
      const field = page.getByLabel('Code shown on your device')
      if ((await field.inputValue()) !== wrong) throw new Error('the wrong entry was not kept')
      if ((await field.getAttribute('aria-invalid')) !== 'true') throw new Error('the field is not marked invalid')
      await j.shot(page, 'wrong-code')
      await field.fill(device.user_code)
      await j.navigation(page, () => page.getByRole('button', { name: 'Continue' }).click())
      await j.expectConfirmation(page, device)
      await j.shot(page, 'confirm')
    },
  },

  // After `throttled` spent the budget of the browser's address on /login: the device page's
  // sign-in answers 429 with Retry-After, even with the right password (one shared budget).
  device_throttled: {
    context: 'fresh',
    async run(j) {
      const page = await j.open(`${input.issuer}/device`)
      await j.signIn(page)
      j.result.attempts = 1
      if (j.result.status !== 429) throw new Error(`the device sign-in answered ${j.result.status}, not 429`)
      j.result.alert = await page.getByRole('alert').textContent()
      await j.expectHeading(page, 'Sign in')
      await j.expectFocus(page, '#password')
      await j.shot(page, 'too-many')
    },
  },
}

// ---- the journey toolkit -------------------------------------------------------------------

const browser = await chromium.launch({ executablePath: input.chromium, headless: true })
const contexts = {}
const screenshots = []
const results = {}

// Generous bounds: the machine running the tests may be busy (argon2 in a debug build).
const TIMEOUT_MS = 90_000

async function context(kind) {
  if (kind === 'main' && contexts.main !== undefined) return contexts.main
  const ctx = await browser.newContext({ javaScriptEnabled: kind !== 'fresh-nojs' })
  ctx.setDefaultTimeout(TIMEOUT_MS)
  ctx.setDefaultNavigationTimeout(TIMEOUT_MS)
  if (kind === 'main') contexts.main = ctx
  return ctx
}

function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url')
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url')
  return { verifier, challenge }
}

class Journey {
  constructor(name, ctx) {
    this.name = name
    this.ctx = ctx
    this.page = null
    this.state = `${name}.${crypto.randomBytes(8).toString('hex')}`
    this.headings = []
    this.result = { state: this.state, audits: [], headings: this.headings }
  }

  // The authorization URL of this journey, with `extra` parameters replacing the defaults.
  authorize(extra = {}) {
    const { verifier, challenge } = pkce()
    this.result.verifier = verifier
    const params = new URLSearchParams({
      response_type: 'code',
      client_id: input.client_id,
      redirect_uri: `${input.callback}/callback`,
      scope: 'openid profile',
      state: this.state,
      code_challenge: challenge,
      code_challenge_method: 'S256',
      ...extra,
    })
    return `${input.issuer}/authorize?${params}`
  }

  async open(url) {
    this.page ??= await this.ctx.newPage()
    const response = await this.page.goto(url)
    await this.loaded(response)
    return this.page
  }

  // Runs `action` (a click or key press that submits a form) and waits for the next document
  // (the end of any redirects). `audit: false` for a page that moves on by itself.
  async navigation(page, action, { audit = true } = {}) {
    const [response] = await Promise.all([page.waitForNavigation(), action()])
    if (audit) await this.loaded(response)
  }

  async loaded(response) {
    const page = this.page
    await page.waitForLoadState('load')
    this.result.status = response === null ? null : response.status()
    this.result.retry_after = response === null ? null : (response.headers()['retry-after'] ?? null)
    this.result.url = page.url()
    if (page.url().startsWith(input.callback)) return
    const heading = await page.locator('h1').first().textContent()
    this.headings.push(heading)
    this.result.audits.push(await audit(page))
  }

  async expectHeading(page, text) {
    const heading = await page.locator('h1').first().textContent()
    if (heading !== text) throw new Error(`expected the page "${text}", got "${heading}" at ${page.url()}`)
  }

  async expectErrorPage(page) {
    await this.expectHeading(page, 'Sign-in error')
    if (!page.url().startsWith(input.issuer)) throw new Error(`redirected away: ${page.url()}`)
    const alert = await page.getByRole('alert').textContent()
    this.result.alert = alert
  }

  // The device authorization the Rust side started for this journey.
  device() {
    const device = (input.devices ?? {})[this.name]
    if (device === undefined) throw new Error(`no device authorization was started for ${this.name}`)
    return device
  }

  // The device confirmation page: it shows the device's code and names the client.
  async expectConfirmation(page, device) {
    await this.expectHeading(page, 'Connect this device?')
    const shown = await page.locator('#shown_code').textContent()
    if (shown !== device.user_code) throw new Error(`the confirmation shows ${shown}, the device ${device.user_code}`)
    const client = await page.locator('#client_name').textContent()
    if (client !== 'Browser Test TV') throw new Error(`the confirmation names "${client}"`)
  }

  async expectFocus(page, selector) {
    const focused = await page.locator(`${selector}:focus`).count()
    if (focused !== 1) throw new Error(`${selector} does not have the keyboard focus on "${this.headings.at(-1)}"`)
  }

  // Presses Tab until `selector` has the focus (at most 10 times).
  async tabTo(page, selector) {
    for (let i = 0; i < 10; i++) {
      await page.keyboard.press('Tab')
      if ((await page.locator(`${selector}:focus`).count()) === 1) return
    }
    throw new Error(`Tab never reaches ${selector} on "${this.headings.at(-1)}"`)
  }

  async signIn(page, options) {
    await this.expectHeading(page, 'Sign in')
    await page.getByLabel('Username').fill(input.username)
    await page.getByLabel('Password').fill(input.password)
    await this.navigation(page, () => page.getByRole('button', { name: 'Sign in' }).click(), options)
  }

  async atCallback(page) {
    await page.waitForURL((url) => url.href.startsWith(input.callback))
    this.result.url = page.url()
  }

  async shot(page, step) {
    const file = path.join(input.screenshots, `${this.name}-${step}.png`)
    await page.screenshot({ path: file, fullPage: true })
    screenshots.push(file)
  }
}

// What a page offers people who do not see it: its language, one heading, a label for every
// visible input, a name for every button, and, on a page with an alert, every input pointing at
// it (aria-describedby) so a screen reader reads the problem with the field.
async function audit(page) {
  const inputs = page.locator('input:not([type=hidden])')
  const alertNodes = page.locator('[role=alert]')
  const alerts = []
  for (let i = 0; i < (await alertNodes.count()); i++) alerts.push((await alertNodes.nth(i).getAttribute('id')) ?? '')
  const unlabelled = []
  const undescribed = []
  for (let i = 0; i < (await inputs.count()); i++) {
    const id = await inputs.nth(i).getAttribute('id')
    const labels = id === null ? 0 : await page.locator(`label[for="${id}"]`).count()
    if (labels === 0) unlabelled.push(await inputs.nth(i).getAttribute('name'))
    const described = ((await inputs.nth(i).getAttribute('aria-describedby')) ?? '').split(/\s+/)
    if (alerts.length > 0 && !alerts.some((alert) => alert !== '' && described.includes(alert))) {
      undescribed.push(await inputs.nth(i).getAttribute('name'))
    }
  }
  const buttons = page.locator('button')
  const unnamed = []
  for (let i = 0; i < (await buttons.count()); i++) {
    if (((await buttons.nth(i).textContent()) ?? '').trim() === '') unnamed.push(i)
  }
  return {
    url: page.url(),
    lang: await page.locator('html').getAttribute('lang'),
    title: await page.title(),
    h1: await page.locator('h1').count(),
    unlabelled,
    unnamed_buttons: unnamed,
    undescribed,
  }
}

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

try {
  await fs.mkdir(input.screenshots, { recursive: true })
  for (const name of input.journeys) {
    const spec = JOURNEYS[name]
    if (spec === undefined) throw new Error(`unknown journey ${name}; one of: ${Object.keys(JOURNEYS).join(', ')}`)
    const ctx = await context(spec.context)
    const journey = new Journey(name, ctx)
    try {
      await spec.run(journey)
    } catch (error) {
      if (journey.page !== null) await journey.shot(journey.page, 'failure').catch(() => {})
      throw new Error(`journey ${name}: ${error.message}`, { cause: error })
    }
    if (spec.context !== 'main') await ctx.close()
    else if (journey.page !== null) await journey.page.close()
    results[name] = journey.result
  }
  process.stdout.write(JSON.stringify({ journeys: results, screenshots }) + '\n')
} finally {
  await browser.close()
}
